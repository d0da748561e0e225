"""Every table of the platform in one `MetaData`: the store's own (organisations,
workspaces, keys, usage) and each feature's. The store knows only its own; the
features register theirs here, where the whole platform is assembled."""

from __future__ import annotations

from sqlalchemy import MetaData

from ..agents import models as agents_models
from ..console import sessions as console_sessions
from ..control import models as control_models
from ..evaluations import models as evaluations_models
from ..finetune import models as finetune_models
from ..responses import models as responses_models
from ..sandbox import hosts as sandbox_hosts
from ..store.models import Base

FEATURE_MODELS = (
    control_models,
    finetune_models,
    agents_models,
    responses_models,
    console_sessions,
    evaluations_models,
    sandbox_hosts,
)


def metadata() -> MetaData:
    """All the platform's tables: what the migrations must create, no more, no less."""
    return Base.metadata
