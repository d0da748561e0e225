"""Sandbox templates: root filesystems built once from a short spec or a
Containerfile (Debian packages and PyPI wheels only), cached by content hash,
that tier-1 sandboxes start from in place of the host's /usr."""

from .build import TemplateBuildFailed
from .spec import TemplateFile, TemplateSpec, from_containerfile, from_dict, from_toml, load
from .store import Template, TemplateStore

__all__ = [
    "Template",
    "TemplateBuildFailed",
    "TemplateFile",
    "TemplateSpec",
    "TemplateStore",
    "from_containerfile",
    "from_dict",
    "from_toml",
    "load",
]
