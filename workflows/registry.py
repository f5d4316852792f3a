"""Every process workflow, for the worker, the replayer and the API's task gauges.

Kept out of `workflows/__init__.py`: the sandbox re-imports a workflow's package for every new
workflow run, so an `__init__` importing all seven process modules made each start execute all
of them (issue 7, profile in docs/performance.md).
"""

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
