"""Text for training and evaluation: offline corpora (`sources`), synthetic retrieval samples (`needles`),
RULER-style long-context tasks (`tasks`) and their data files (`task_data`)."""

from rtpurbo.data.needles import (
    KINDS,
    SEED_NAMESPACES,
    NeedleSample,
    make_sample,
    make_samples,
    seed_for,
    teacher_forced_accuracy,
)
from rtpurbo.data.source_install import SourceUnavailable, default_cache_dir, ensure_source
from rtpurbo.data.source_table import SOURCES, Source, sources_in_pool
from rtpurbo.data.sources import Document, iter_documents, long_documents

__all__ = [
    "KINDS",
    "SEED_NAMESPACES",
    "NeedleSample",
    "make_sample",
    "make_samples",
    "seed_for",
    "teacher_forced_accuracy",
    "SOURCES",
    "Document",
    "Source",
    "SourceUnavailable",
    "default_cache_dir",
    "ensure_source",
    "iter_documents",
    "long_documents",
    "sources_in_pool",
]
