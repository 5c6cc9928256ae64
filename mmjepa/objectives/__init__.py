"""Training objectives: each is one registered module (see ``base.py``); importing this package
registers the built-in ones."""

from .base import (LatentView, Objective, ObjectiveConfig, ObjectiveOutput, build_objectives, get_objective,
                   objective_config, register_objective, registered_objectives)
from .contrastive import Contrastive
from .cross import CrossModalPrediction, PooledPrediction
from .intra import IntraModalPrediction, collapse_metrics, latent_loss
from .readout import TokenReadout
from .sigreg import SigReg, sigreg
from .supervised import Supervised

__all__ = ["LatentView", "Objective", "ObjectiveConfig", "ObjectiveOutput", "build_objectives", "get_objective",
           "objective_config", "register_objective", "registered_objectives", "IntraModalPrediction",
           "CrossModalPrediction", "PooledPrediction", "Contrastive", "Supervised", "TokenReadout", "SigReg",
           "collapse_metrics", "latent_loss", "sigreg"]
