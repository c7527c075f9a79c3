"""sam3d-bot's platform-free core: a photo in, a 3D model out, fairly paid for."""

__version__ = "0.1.0"
