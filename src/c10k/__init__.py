"""c10k: measure how server concurrency architectures scale.

The library imports without the command line: ``c10k.servers`` holds the echo
servers, ``c10k.load`` the load client, ``c10k.study`` the study runner.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
