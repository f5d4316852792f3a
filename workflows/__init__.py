"""Deterministic orchestration only: a module per process, plus the shared human-task primitive."""

from workflows.customer_invitation import CustomerInvitation
from workflows.dissociation import Dissociation
from workflows.incentive import IncentiveApplication
from workflows.invitation import AssociationInvitation
from workflows.opportunity import OpportunityReview
from workflows.reseller import ResellerApplication

ALL_WORKFLOWS: list[type] = [
    OpportunityReview,
    AssociationInvitation,
    CustomerInvitation,
    Dissociation,
    ResellerApplication,
    IncentiveApplication,
]
