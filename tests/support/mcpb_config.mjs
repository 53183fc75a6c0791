// Resolves a bundle's mcp_config as Claude Desktop does, with the mcpb package's own
// getMcpConfigForManifest (defaults, ${user_config.*}, ${__dirname}, platform overrides).
// node mcpb_config.mjs <mcpb dist/index.js> <manifest.json> <extension dir> <user config JSON>
import { readFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [mcpbIndex, manifestPath, extensionPath, userConfig] = process.argv.slice(2);
const { getMcpConfigForManifest } = await import(pathToFileURL(mcpbIndex).href);
const home = os.homedir();
const config = await getMcpConfigForManifest({
  manifest: JSON.parse(await readFile(manifestPath, "utf8")),
  extensionPath,
  systemDirs: {
    HOME: home,
    DESKTOP: path.join(home, "Desktop"),
    DOCUMENTS: path.join(home, "Documents"),
    DOWNLOADS: path.join(home, "Downloads"),
  },
  userConfig: JSON.parse(userConfig),
  pathSeparator: path.sep,
});
process.stdout.write(JSON.stringify(config ?? null));
