"""Source-format converters: raw files of a public dataset -> unified records.

``CONVERTERS`` maps a ``--format`` name to its converter; ``convert_files`` runs one over
files. Each converter's docstring states the raw schema it assumes. Importing this package
registers every converter.
"""

from . import dialogue, instruction, preference, tasks  # noqa: F401  (registration)
from .base import (CONVERTERS, BadRecord, ConversionReport, ConvertContext, Converter, Skip,
                   canonical, convert_files, dialogue as dialogue_record, get_converter,
                   register_converter, split_markers)

__all__ = ["CONVERTERS", "BadRecord", "ConversionReport", "ConvertContext", "Converter", "Skip",
           "canonical", "convert_files", "dialogue_record", "get_converter", "register_converter",
           "split_markers"]
