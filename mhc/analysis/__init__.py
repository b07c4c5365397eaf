"""Attention-head analysis of transformer backbones: maps, patterns, importance, pruning."""

from mhc.analysis.attention import HeadLayout, HeadPatterns, attention_rollout, pattern_labels
from mhc.analysis.importance import combined_importance, head_importance
from mhc.analysis.pruning import evaluate_heads, pruning_curve, pruning_order, select_heads
from mhc.analysis.report import Analysis, analyze, write_report

__all__ = [
    "Analysis",
    "HeadLayout",
    "HeadPatterns",
    "analyze",
    "attention_rollout",
    "combined_importance",
    "evaluate_heads",
    "head_importance",
    "pattern_labels",
    "pruning_curve",
    "pruning_order",
    "select_heads",
    "write_report",
]
