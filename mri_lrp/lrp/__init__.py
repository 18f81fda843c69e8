"""Layer-wise Relevance Propagation for any torch.fx-traceable classifier, 2D or 3D."""

from mri_lrp.lrp.composites import COMPOSITES, Composite
from mri_lrp.lrp.explain import Explainer, Explanation, describe_rules, explain, output_relevance, resolve_target
from mri_lrp.lrp.rules import RULES, Rule, make_rule

__all__ = ["COMPOSITES", "RULES", "Composite", "Explainer", "Explanation", "Rule", "describe_rules", "explain",
           "make_rule", "output_relevance", "resolve_target"]
