"""drop the unused dispatcher index

The dispatcher's claim (queued rows, oldest first) walks ix_messages_status_id; nothing read
ix_messages_status_next_attempt, yet every status change a callback makes wrote it (on
PostgreSQL every update of a message adds an entry to each of its indexes).

Revision ID: 06037c808b63
Revises: c17069ba21ce
Create Date: 2026-11-28 10:13:10.011309

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '06037c808b63'
down_revision = 'c17069ba21ce'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_status_next_attempt')


def downgrade():
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.create_index('ix_messages_status_next_attempt', ['status', 'next_attempt_at'],
                              unique=False)
