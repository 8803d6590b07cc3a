"""callback request keys

Every callback request gets a key on arrival; a unique index on it makes applying a journaled
callback idempotent (the journal may hold an event that a slow transaction also committed).

On PostgreSQL the index is built CONCURRENTLY, so a live relay keeps taking callbacks while
it is built on a large table.

Revision ID: 3f1c9a2b7d40
Revises: 06037c808b63
Create Date: 2026-12-01 23:40:00.000000

"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = '3f1c9a2b7d40'
down_revision = '06037c808b63'
branch_labels = None
depends_on = None


def upgrade():
    op.add_column('callback_events', sa.Column('request_key', sa.String(length=32), nullable=True))
    if op.get_bind().dialect.name == 'postgresql':
        with op.get_context().autocommit_block():
            op.create_index('uq_callback_events_request_key', 'callback_events',
                            ['request_key'], unique=True, postgresql_concurrently=True)
    else:
        op.create_index('uq_callback_events_request_key', 'callback_events', ['request_key'],
                        unique=True)


def downgrade():
    op.drop_index('uq_callback_events_request_key', table_name='callback_events')
    with op.batch_alter_table('callback_events', schema=None) as batch_op:
        batch_op.drop_column('request_key')
