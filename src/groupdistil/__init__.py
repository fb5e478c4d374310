"""groupdistil: knowledge distillation that keeps minority groups and rare classes.

The public API: per-sample loss terms, the group-risk aggregation, the online group-DRO weights, and
the objectives built from them. Data, models, the engine and reports live in submodules.
"""

# First: sets OpenMP's wait policy for the command line before anything imports torch.
import groupdistil._omp  # noqa: F401
from groupdistil.errors import CheckpointError, ConfigError, DataError, UserError
from groupdistil.kd_terms import KD_TERMS, DistillTerm
from groupdistil.losses import (
    adjust_logits,
    adjust_logits_weighted,
    class_groups_by_count,
    cross_entropy,
    decoupled_distillation,
    distillation,
    group_kl_decomposition,
    logit_adjusted_cross_entropy,
    long_tail_distillation,
    mixed,
    soft_cross_entropy,
)
from groupdistil.objectives import (
    DKD,
    DRO,
    ERM,
    JTT,
    KD,
    LTKD,
    OBJECTIVES,
    ClassRobustKD,
    GroupDistil,
    KDReweight,
    LogitAdjusted,
    Objective,
    ObjectiveOutput,
    Reweight,
    RobustTeacher,
    build_objective,
    objective_options,
)
from groupdistil.pseudogroups import InferredGroups, infer_groups
from groupdistil.robust import GroupDRO, GroupRisks, group_risks

__version__ = "0.1.0"

__all__ = [
    "DKD",
    "DRO",
    "ERM",
    "JTT",
    "KD",
    "KD_TERMS",
    "LTKD",
    "OBJECTIVES",
    "CheckpointError",
    "ClassRobustKD",
    "ConfigError",
    "DataError",
    "DistillTerm",
    "GroupDRO",
    "GroupDistil",
    "GroupRisks",
    "InferredGroups",
    "KDReweight",
    "LogitAdjusted",
    "Objective",
    "ObjectiveOutput",
    "Reweight",
    "RobustTeacher",
    "UserError",
    "__version__",
    "adjust_logits",
    "adjust_logits_weighted",
    "build_objective",
    "class_groups_by_count",
    "cross_entropy",
    "decoupled_distillation",
    "distillation",
    "group_kl_decomposition",
    "group_risks",
    "infer_groups",
    "logit_adjusted_cross_entropy",
    "long_tail_distillation",
    "mixed",
    "objective_options",
    "soft_cross_entropy",
]
