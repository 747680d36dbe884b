"""The model files an export ships beside nGPT's weights (loaded with trust_remote_code=True)."""
