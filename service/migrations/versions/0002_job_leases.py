"""job leases: lane, owner, lease expiry, attempts

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 17:08:33.046841
"""

from __future__ import annotations

import sqlalchemy as sa
from advanced_alchemy.types import GUID, DateTimeUTC
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

sa.GUID = GUID  # autogenerate renders advanced-alchemy's types as sa.<name>
sa.DateTimeUTC = DateTimeUTC


def upgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lane', sa.String(length=32), server_default='default', nullable=False))
        batch_op.add_column(sa.Column('owner', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('lease_expires_at', sa.DateTimeUTC(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('attempts', sa.Integer(), server_default='0', nullable=False))
        batch_op.create_index('ix_job_status_lane', ['status', 'lane'], unique=False)
    # Jobs written before lanes existed get the lane their kind always ran on.
    op.execute("UPDATE job SET lane = 'index' WHERE kind LIKE 'index.%' OR kind LIKE 'embedder.%'")
    op.execute("UPDATE job SET lane = 'eval' WHERE kind = 'eval'")


def downgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_index('ix_job_status_lane')
        batch_op.drop_column('attempts')
        batch_op.drop_column('lease_expires_at')
        batch_op.drop_column('owner')
        batch_op.drop_column('lane')

