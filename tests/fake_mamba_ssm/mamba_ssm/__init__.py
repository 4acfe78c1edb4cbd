"""Test stand-in for mamba_ssm (structure of mamba_ssm 2.x, Mamba-1 only); see ../README.md."""

__version__ = "0.0.0+fake"

from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
from mamba_ssm.modules.mamba_simple import Mamba

__all__ = ["Mamba", "MambaLMHeadModel"]
