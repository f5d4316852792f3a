"""Deterministic orchestration only: a module per process, plus the shared human-task primitive."""

from workflows.certification import Certification
from workflows.customer_invitation import CustomerInvitation
from workflows.dissociation import Dissociation
from workflows.incentive import IncentiveApplication
from workflows.invitation import AssociationInvitation
from workflows.opportunity import OpportunityReview
from workflows.reseller import ResellerApplication

ALL_WORKFLOWS: list[type] = [
    OpportunityReview,
    Certification,
    AssociationInvitation,
    CustomerInvitation,
    Dissociation,
    ResellerApplication,
    IncentiveApplication,
]
