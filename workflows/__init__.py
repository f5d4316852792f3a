"""Deterministic orchestration only: a module per process, plus the shared human-task primitive."""

from workflows.certification import Certification
from workflows.opportunity import OpportunityReview

ALL_WORKFLOWS: list[type] = [OpportunityReview, Certification]
