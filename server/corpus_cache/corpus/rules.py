"""What is left out of a corpus by default, as data.

Secret files are never sent to the API by default: they are matched by name before any
content is read, case-insensitively and after Unicode compatibility folding (so the
patterns are written in lower case), and so are their variants and backups (`.env-prod`,
`.env~`, `id_rsa.bak`, `#.env#`): see secret_names.py. Secrets inside other files are
found by content: see secret_content.py. Folders that hold tools' state rather than
documents are pruned whole.
"""

from __future__ import annotations

SECRET_PATTERNS = (
    ".env",
    ".env*",
    ".env.*",
    "*.env",
    ".envrc",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.ppk",
    "*.keytab",
    "*.jks",
    "*.keystore",
    "*.kdbx",
    "*.gpg",
    "*.asc",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    ".netrc",
    ".pgpass",
    ".npmrc",
    ".pypirc",
    ".s3cfg",
    ".boto",
    ".my.cnf",
    ".dockercfg",
    ".htpasswd",
    ".git-credentials",
    "credentials",
    "credentials.*",
    "*credentials*.json",
    "service-account*.json",
    "secrets.*",
    "*.secret",
    "*.secrets",
    "terraform.tfstate*",
    "*.tfvars",
    "*.tfvars.json",
    ".vault-token",
    "kubeconfig",
    "*.kubeconfig",
    "wallet.dat",
    ".aws/",
    ".ssh/",
    ".gnupg/",
    ".docker/config.json",
    ".kube/config",
)

PRUNED_DIRECTORIES = frozenset(
    {
        ".git", ".hg", ".svn", ".bzr", "node_modules", "bower_components", ".venv", "venv",
        "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".tox", ".nox",
        ".hypothesis", ".cache", ".gradle", ".idea", ".vscode", "dist", "build", "target",
        "out", ".next", ".nuxt", ".svelte-kit", ".terraform", ".eggs", "site-packages",
        ".ipynb_checkpoints", ".DS_Store",
    }
)  # fmt: skip

LOCK_FILES = frozenset(
    {
        "package-lock.json", "yarn.lock", "pnpm-lock.yaml", "poetry.lock", "uv.lock",
        "Cargo.lock", "Gemfile.lock", "composer.lock", "Pipfile.lock", "go.sum", "bun.lockb",
    }
)  # fmt: skip

BINARY_SUFFIXES = frozenset(
    (
        ".png .jpg .jpeg .gif .bmp .ico .webp .tiff .psd .heic .mp3 .wav .flac .ogg .m4a .mp4 "
        ".mov .avi .mkv .webm .zip .tar .gz .tgz .bz2 .xz .7z .rar .zst .jar .war .whl .egg "
        ".exe .dll .so .dylib .o .a .lib .bin .dat .class .pyc .pyo .wasm .ttf .otf .woff "
        ".woff2 .eot .sqlite .sqlite3 .db .doc .xlsx .xls .pptx .ppt .odt .ods "
        ".key .numbers .pages .parquet .feather .arrow .npy .npz .pkl .pickle .h5 .onnx .pt "
        ".ckpt .safetensors .iso .dmg .img"
    ).split()
)
