"""Multi-tenant governance: API keys scoped to workspaces and capabilities, limits
shared through the database, usage and energy metering, audit, and erasure.

A server opens one `Tenancy`, calls `install(app)`, guards routes with
`Depends(require(Capability.INFERENCE))` and meters them with `record_usage` (or,
on the hot path, `submit_usage`: written by a `BackgroundWriter` thread);
`admin_router` serves `/v1/admin`, `request_logs_router` a workspace's stored
requests (`RequestLogEntry`, queued on `Tenancy.request_logs` when its workspace
opted in), and `cli.app` is the `tramontane` sub-command.
"""

from .audit import CLI, SYSTEM, Actor
from .background_writer import BackgroundWriter
from .capabilities import ALL_CAPABILITIES, Capability, parse_capabilities
from .dependencies import enter_request, get_tenancy, require
from .energy import EnergyMeter, EnergyReading
from .errors import install_error_handler, not_found
from .keys import bootstrap_admin_key
from .limits import AdmissionLimits
from .ownership import get_owned, owned
from .principal import Limits, Principal
from .request_logs import RequestLogEntry, RequestLogWriter
from .request_logs_api import router as request_logs_router
from .service import HeldSlot, Tenancy
from .usage import Usage

__all__ = [
    "ALL_CAPABILITIES",
    "CLI",
    "SYSTEM",
    "Actor",
    "AdmissionLimits",
    "BackgroundWriter",
    "Capability",
    "EnergyMeter",
    "EnergyReading",
    "HeldSlot",
    "Limits",
    "Principal",
    "RequestLogEntry",
    "RequestLogWriter",
    "Tenancy",
    "Usage",
    "bootstrap_admin_key",
    "enter_request",
    "get_owned",
    "get_tenancy",
    "install_error_handler",
    "not_found",
    "owned",
    "parse_capabilities",
    "request_logs_router",
    "require",
]
