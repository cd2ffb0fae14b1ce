"""Pack objects (docs/FORMAT.md §8): many small members in one stored object, masked, padded,
with a sealed index. Pure: bytes in, bytes out; the caller does every upload and download."""
from __future__ import annotations

from .index import encode_index, open_sealed, parse_index, seal_index
from .layout import MAX_MEMBERS, MAX_PACK_SIZE, VERSION, padded_size
from .members import PackIndex, PackMember
from .policy import PackPolicy, load_policy
from .reader import PackReader, covering_range, extract, open_index
from .repack import RepackPlan, plan_repack
from .spans import Span, plan_spans
from .writer import PackWriter, build_pack

__all__ = ["MAX_MEMBERS", "MAX_PACK_SIZE", "VERSION", "PackIndex", "PackMember",
           "PackPolicy", "PackReader", "PackWriter", "RepackPlan", "Span", "build_pack",
           "covering_range", "encode_index", "extract", "load_policy", "open_index",
           "open_sealed", "padded_size", "parse_index", "plan_repack", "plan_spans",
           "seal_index"]
