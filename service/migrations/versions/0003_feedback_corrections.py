"""feedback corrections

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 18:10:54.267382
"""

from __future__ import annotations

import sqlalchemy as sa
from advanced_alchemy.types import GUID, DateTimeUTC
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

sa.GUID = GUID  # autogenerate renders advanced-alchemy's types as sa.<name>
sa.DateTimeUTC = DateTimeUTC


def upgrade() -> None:
    with op.batch_alter_table('feedback', schema=None) as batch_op:
        batch_op.add_column(sa.Column('correction', sa.Text(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('feedback', schema=None) as batch_op:
        batch_op.drop_column('correction')

