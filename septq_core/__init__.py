"""SEPTQ Explorer: SEPTQ, GPTQ and RTN post-training quantization, and the tools to see why."""

from .config import MASK_SCOPES, METHODS, PRESETS, ConfigError, QuantConfig
from .data import CORPORA, CalibrationSet, Corpus, CorpusError, calibration_windows, load_eval_corpus
from .evaluate import Cancelled, Perplexity, generate, perplexity, window_count
from .export import ExportError, load_quantized, save_quantized
from .grid import fit_grid, rtn
from .hessian import Hessian
from .models import LoadedModel, LoadError, default_model_path, find_blocks, load_model
from .pipeline import ModuleReport, QuantRun, fp_hessians, quantize_model
from .solver import MatrixResult, NonFiniteError, bits_per_weight, importance_scores, quantize_matrix, select_mask
from .store import RunStore, StoreError, record_run

__version__ = "0.1.0"

__all__ = [
    "METHODS", "MASK_SCOPES", "PRESETS", "ConfigError", "QuantConfig",
    "CORPORA", "CalibrationSet", "Corpus", "CorpusError", "calibration_windows", "load_eval_corpus",
    "Cancelled", "Perplexity", "generate", "perplexity", "window_count",
    "fit_grid", "rtn", "Hessian",
    "LoadError", "LoadedModel", "default_model_path", "find_blocks", "load_model",
    "ModuleReport", "QuantRun", "fp_hessians", "quantize_model",
    "MatrixResult", "NonFiniteError", "bits_per_weight", "importance_scores", "quantize_matrix", "select_mask",
    "ExportError", "load_quantized", "save_quantized", "RunStore", "StoreError", "record_run",
]
