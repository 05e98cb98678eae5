"""tierflow: one generative model across device, edge and cloud.

Importing tierflow has no side effects; the public names are below.
"""

from importlib.metadata import version as package_version

from tierflow.errors import TierflowError, UserError
from tierflow.runtime.lm import CausalLM, SamplingConfig
from tierflow.types import Tier

__version__ = package_version("tierflow")

__all__ = ["CausalLM", "SamplingConfig", "Tier", "TierflowError", "UserError", "__version__", "load"]


def __getattr__(name: str) -> object:
    # `load` pulls in the data plane (gRPC) for the cloud proxy: import it on first use only
    if name == "load":
        from tierflow.engine.load import load

        return load
    raise AttributeError(f"module 'tierflow' has no attribute {name!r}")
