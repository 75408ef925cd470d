"""cosyvoice-ext: versioned patches and pluggy plugins for upstream CosyVoice training."""

__version__ = "0.1.0"
