"""GX's Data Docs page views, with their Jinja templates compiled once per process.

GX builds a new SiteBuilder, and so new views with a new Jinja environment, for every Data Docs
update: each gate recompiled the same few dozen templates (about three quarters of a gate's
Data Docs time, profiled). These views are GX's own, configured through the site's documented
`view` settings (see runner.gx_context), with one in-memory bytecode cache shared by every
environment: a template is compiled once, and recompiled only if its source changes."""
from __future__ import annotations

from jinja2 import BytecodeCache
from jinja2.bccache import Bucket
from great_expectations.render.view import DefaultJinjaIndexPageView, DefaultJinjaPageView


class _InMemoryBytecodeCache(BytecodeCache):
    """Compiled templates by Jinja's bucket key (template name and file); a bucket checks the
    source's checksum itself, so an edited template is compiled again."""

    def __init__(self) -> None:
        self._compiled: dict[str, bytes] = {}

    def load_bytecode(self, bucket: Bucket) -> None:
        compiled = self._compiled.get(bucket.key)
        if compiled is not None:
            bucket.bytecode_from_string(compiled)

    def dump_bytecode(self, bucket: Bucket) -> None:
        self._compiled[bucket.key] = bucket.bytecode_to_string()


COMPILED = _InMemoryBytecodeCache()


class _CompiledOnce:
    """Points a GX view's new Jinja environment at the process's compiled templates."""

    def __init__(self, custom_styles_directory=None, custom_views_directory=None) -> None:
        super().__init__(custom_styles_directory, custom_views_directory)
        self.env.bytecode_cache = COMPILED


class CachedJinjaPageView(_CompiledOnce, DefaultJinjaPageView):
    pass


class CachedJinjaIndexPageView(_CompiledOnce, DefaultJinjaIndexPageView):
    pass
