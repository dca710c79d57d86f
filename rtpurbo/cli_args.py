"""Argument helpers shared by every ``rtpurbo`` subcommand parser.

``rtpurbo.cli`` builds the top-level parser and each area's ``commands`` module adds its
own subcommands; both import these helpers from here, so no command module imports the CLI.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from .config import PREFILL_SCORINGS, RETRIEVAL_PREFILL, SparseConfig, check_ratio
from .models import DEFAULT_MODEL
from .ops.api import ATTENTION_IMPLS, DECODE_IMPLS


class SettingsError(ValueError):
    """Flags or settings from the command line that cannot work together, or a flag that would do nothing: a usage
    error, printed in one line without a traceback, exit status 2 as argparse's own."""


class RecordGiven(argparse.Action):
    """Store the value and remember that the user gave the flag (``args.given``): settings that a plan file
    also carries yield to the file only where the flag was not given."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given = sorted(set(getattr(namespace, "given", ())) | {self.dest})  # a list: configs record it


def given_flags(args: argparse.Namespace, *names: str) -> str:
    """The flags of ``names`` (their dests) that the user gave (:class:`RecordGiven`), dashed and comma-joined, in
    the order of ``names``; "" where none was given."""
    given = set(getattr(args, "given", ()))
    return ", ".join("--" + name.replace("_", "-") for name in names if name in given)


def _at_least(value: str, least: int) -> int:
    number = int(value)
    if number < least:
        raise argparse.ArgumentTypeError(f"must be an integer >= {least}, got {value}")
    return number


def positive_int(value: str) -> int:
    return _at_least(value, 1)


def count_value(value: str) -> int:
    return _at_least(value, 0)


def sequence_length(value: str) -> int:
    """Tokens per training sequence: an integer >= 2 (a next-token target needs two)."""
    return _at_least(value, 2)


def path_value(value: str) -> Path:
    """A path flag: ``~`` expanded as the shell would, so a quoted ``"~/x"`` names the same folder everywhere."""
    return Path(value).expanduser()


def beside(path: Path, suffix: str) -> Path:
    """The sibling ``NAME + suffix`` of ``path`` (``OUT-profile``, ``OUT.checkpoints``), ``path`` resolved first so
    that ``.`` or ``..`` has a name; a path without one (``/``) is a :class:`SettingsError`."""
    resolved = Path(path).resolve()
    if not resolved.name:
        raise SettingsError(f"{path} has no name to put {suffix!r} after: name a directory")
    return resolved.with_name(resolved.name + suffix)


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None


def count_float(value: str) -> float:
    """A finite number >= 0 (e.g. seconds)."""
    number = _number(value)
    if not 0 <= number < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {value}")
    return number


def share_value(value: str) -> float:
    """A share in [0, 1]."""
    number = _number(value)
    if not 0 <= number <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {value}")
    return number


def positive_float(value: str) -> float:
    """A finite number > 0."""
    number = _number(value)
    if not 0 < number < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {value}")
    return number


def device_value(value: str) -> str:
    """``auto`` or a torch device name (cpu, cuda, cuda:1, ...)."""
    import torch

    if value != "auto":
        try:
            torch.device(value)
        except RuntimeError as err:
            raise argparse.ArgumentTypeError(f"{value!r} is not a device: cpu, cuda, cuda:N or auto") from err
    return value


def size_value(value: str) -> int:
    """A file size: bytes, or a number with KB / MB / GB / TB (powers of 1000, as transformers counts them)."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
    text = value.strip().upper()
    number = text.rstrip("KMGTB")
    try:
        size = int(float(number) * units[text[len(number):]])
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"must be a size such as 500MB or 5GB, got {value!r}") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"must be a size > 0, got {value!r}")
    return size


def share_below_one(value: str) -> float:
    """A share in [0, 1): some, not all (e.g. synthetic sequences among natural ones)."""
    number = float(value)
    if not 0 <= number < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return number


def ratio_value(value: str) -> float:
    number = float(value)
    try:
        check_ratio(number)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return number


def top_p_value(value: str) -> float:
    number = float(value)
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"top-p must be in (0, 1], got {value}")
    return number


def add_model(p: argparse.ArgumentParser, artifact_ok: bool = False) -> None:
    what = "embedded name, HF model directory, .gguf file, Hugging Face Hub id org/name" + (
        ", rtpurbo artifact directory or shipped adapter (smollm2-135m-rtpurbo)" if artifact_ok else "")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"{what} (default: {DEFAULT_MODEL})")
    if artifact_ok:
        p.add_argument("--base", help="an artifact's base model where it is now (default: where the artifact "
                                      "records it); --revision then applies to it")
    add_revision(p)
    p.add_argument("--device", type=device_value, default="auto", help="cpu, cuda, cuda:N, or auto (cuda when "
                                                                      "available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype (auto: float32 on CPU, bfloat16 on GPU)")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def add_revision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--revision", help="branch, tag or commit of a Hub --model (default: main; an artifact records "
                                      "its base's commit). Read from the Hub when online, else from the local "
                                      "cache (HF_HOME; HF_HUB_OFFLINE=1 never connects)")


def add_sparse(p: argparse.ArgumentParser) -> None:
    d = SparseConfig()
    p.add_argument("--window", type=positive_int, default=1024, action=RecordGiven,
                   help="W: tokens a local head sees (default 1024; a --plan file's own W, if it has one)")
    p.add_argument("--sinks", type=count_value, default=d.sinks, action=RecordGiven,
                   help=f"S: sink tokens (default {d.sinks}; a --plan file's own S, if it has one)")
    p.add_argument("--index-dim", type=positive_int, default=d.index_dim, help="indexer width d_idx")
    p.add_argument("--index-rope-dims", type=count_value, default=d.index_rope_dims,
                   help="indexer dims with RoPE (even, at most --index-dim)")
    p.add_argument("--top-p", type=top_p_value, default=d.top_p, help="indexer mass kept at decode (1 = full)")
    p.add_argument("--min-tokens", type=count_value, default=d.min_tokens, help="lower clamp of the top-p budget")
    p.add_argument("--max-tokens", type=positive_int, default=d.max_tokens, help="upper clamp of the top-p budget")
    p.add_argument("--recent", type=count_value, default=d.recent, help="recent tokens retrieval heads always keep")
    p.add_argument("--seqlen-threshold", type=count_value, default=d.seqlen_threshold, action=RecordGiven,
                   help=f"cached tokens from which retrieval heads select at decode (below: all keys; 0 = always "
                        f"select; default {d.seqlen_threshold})")
    p.add_argument("--retrieval-prefill", choices=RETRIEVAL_PREFILL, default=d.retrieval_prefill,
                   help="retrieval heads at prefill: dense (default), sparse (indexer-chosen key blocks) or topp")
    p.add_argument("--prefill-top-p", type=top_p_value, default=d.prefill_top_p, help="sparse prefill: block mass kept")
    p.add_argument("--prefill-min-blocks", type=int, default=d.prefill_min_blocks, help="sparse prefill: floor")
    p.add_argument("--prefill-max-blocks", type=int, default=d.prefill_max_blocks, help="sparse prefill: cap")
    p.add_argument("--prefill-band", type=positive_int, default=d.prefill_band,
                   help="sparse prefill: tokens before each query block always attended")
    p.add_argument("--prefill-dense-tail", type=int, default=d.prefill_dense_tail,
                   help="sparse prefill: the prompt's last N queries attend densely, where its question sits "
                        "(0 = none)")
    p.add_argument("--prefill-scoring", choices=PREFILL_SCORINGS, default=d.prefill_scoring,
                   help="sparse prefill: key-block scores from mean indexer vectors (pooled) or the indexer's "
                        "probability mass per block (mass: keeps needle blocks, costs more)")
    p.add_argument("--impl", choices=ATTENTION_IMPLS, default=d.impl, help="attention backend (default auto)")
    p.add_argument("--decode-impl", choices=DECODE_IMPLS, default=d.decode_impl,
                   help="top-p decode backend (default auto)")
    p.add_argument("--reorder-heads", action="store_true", help="make retrieval KV heads contiguous")


def sparse_from_args(args: argparse.Namespace, **from_plan: Any) -> SparseConfig:
    """The sparse settings of the command line; ``from_plan`` (window / sinks / seqlen_threshold of a ``--plan``
    file) stands where the user gave no flag, and a flag that contradicts it raises :class:`SettingsError`."""
    given = set(getattr(args, "given", ()))
    clashes = [f"--{name.replace('_', '-')} {getattr(args, name)} (the file says {value})"
               for name, value in from_plan.items() if name in given and getattr(args, name) != value]
    if clashes:
        raise SettingsError(f"the --plan file sets what the command line contradicts: {', '.join(clashes)}; "
                            "leave the flags out to use the file's values")
    fields = dict(
        window=args.window, sinks=args.sinks, index_dim=args.index_dim, index_rope_dims=args.index_rope_dims,
        top_p=args.top_p, min_tokens=args.min_tokens, max_tokens=args.max_tokens, recent=args.recent,
        seqlen_threshold=args.seqlen_threshold, retrieval_prefill=args.retrieval_prefill,
        prefill_top_p=args.prefill_top_p, prefill_min_blocks=args.prefill_min_blocks,
        prefill_max_blocks=args.prefill_max_blocks, prefill_band=args.prefill_band,
        prefill_dense_tail=args.prefill_dense_tail,
        prefill_scoring=args.prefill_scoring,
        impl=args.impl, decode_impl=args.decode_impl, reorder_heads=args.reorder_heads,
    )
    fields.update(from_plan)
    try:
        return SparseConfig(**fields)
    except ValueError as err:
        raise SettingsError(f"sparse settings: {err}") from err


def check_index_dim(index_dim: int, head_dim: int) -> None:
    """``--index-dim`` against the model's head_dim (:func:`rtpurbo.modules.indexer.check_index_dim`), checked before
    the long work as a :class:`SettingsError`."""
    from .modules.indexer import check_index_dim as indexer_check

    try:
        indexer_check(index_dim, head_dim)
    except ValueError as err:
        raise SettingsError(f"--index-dim {index_dim}: {err}") from err


def add_haystacks(p: argparse.ArgumentParser) -> None:
    p.add_argument("--haystacks", choices=["both", "builtin", "data"], default="both", action=RecordGiven,
                   help="profiling prompts' haystacks when --data is given: the built-in training-pool text and "
                        "the --data documents (both, the default: the plan comes from both and the report says how "
                        "stable it is across the two), or only one of them")


def add_profile(p: argparse.ArgumentParser) -> None:
    p.add_argument("--retrieval-ratio", type=ratio_value, default=0.15, action=RecordGiven,
                   help="share of KV heads kept full (default 0.15)")
    p.add_argument("--profile-length", type=positive_int, default=2048, action=RecordGiven,
                   help="tokens per profiling prompt")
    p.add_argument("--profile-samples", type=positive_int, default=6, action=RecordGiven,
                   help="profiling prompts per needle kind")


def add_criterion(p: argparse.ArgumentParser) -> None:
    """``rtpurbo profile``: how heads are ranked (copy score, or knockout: what windowing a head costs)."""
    p.add_argument("--criterion", choices=["copy", "knockout"], default="copy",
                   help="copy: copy score on needle prompts (default); knockout: the dense model's KL on long text "
                        "and task answers when one KV head alone is windowed (one forward per head and input)")
    p.add_argument("--knockout-data", type=path_value, action=RecordGiven,
                   help="tune-split task data (rtpurbo eval --prepare-only --split tune); default: built now from the "
                        "dev pool")
    p.add_argument("--knockout-samples", type=positive_int, default=2, action=RecordGiven,
                   help="prompts per task and length (default 2)")
    p.add_argument("--knockout-windows", type=count_value, default=4, action=RecordGiven, help="long texts (default 4)")
    p.add_argument("--knockout-length", type=positive_int, default=4096, action=RecordGiven,
                   help="tokens per prompt and text when the data is built now (default 4096)")
    p.add_argument("--text-weight", type=share_value, default=0.5, action=RecordGiven,
                   help="share of the knockout ranking from text KL; the rest from task answers (default 0.5)")
