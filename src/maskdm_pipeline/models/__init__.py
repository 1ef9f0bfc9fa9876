"""U-ViT backbone with MAE-style token dropping (pure torch, no Kedro)."""
