"""The model table (models.toml) and pricing: what each model costs and allows. Pure."""
