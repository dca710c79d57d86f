"""Export a converted model as a Hugging Face model directory (see :mod:`rtpurbo.export.writer`)."""
from .writer import ExportError, export

__all__ = ["ExportError", "export"]
