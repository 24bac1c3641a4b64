"""Load and convert pretrained recognisers: hub models and the bundled offline default."""
