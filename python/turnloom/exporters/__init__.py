"""Dataset exporters: SFT messages, ShareGPT, token ids with loss masks, DPO and
REFUEL pairs, as JSON lines or Parquet. They stream records (one conversation
tree in memory at most) and run during a run (``[[exporters]]`` in a scenario)
or afterwards on a run directory (`export_run`, ``turnloom export``)."""

from turnloom.exporters.filter import FilterError, parse_filter
from turnloom.exporters.pairs import DPOPairs, RefuelPairs
from turnloom.exporters.run import ExportResult, export_run, read_records
from turnloom.exporters.sft import SFTMessages, SFTTokens, ShareGPT

DATASET_EXPORTERS = (SFTMessages, ShareGPT, SFTTokens, DPOPairs, RefuelPairs)

__all__ = ["DATASET_EXPORTERS", "DPOPairs", "ExportResult", "FilterError", "RefuelPairs",
           "SFTMessages", "SFTTokens", "ShareGPT", "export_run", "parse_filter", "read_records"]
