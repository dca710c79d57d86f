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
from rtpurbo.data.sources import (
    SOURCES,
    Document,
    Source,
    SourceUnavailable,
    default_cache_dir,
    ensure_source,
    iter_documents,
    long_documents,
    sources_in_pool,
)

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
