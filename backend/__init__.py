"""Scene Diffusion backend: the diffusion engine, its command line and its server.

Importing this package never imports torch or diffusers; the engine does when it is built.
"""

__version__ = "0.1.0"
