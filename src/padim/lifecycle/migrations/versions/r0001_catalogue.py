"""The first catalogue: products, versions, aliases, audit events, records, kept images and
their usage, tokens.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "products",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("product_id", sa.Integer, sa.ForeignKey("products.id"), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("parent", sa.Integer),
        sa.Column("n_train", sa.Integer),
        sa.Column("images_sha256", sa.String(64)),
        sa.Column("image_digests", sa.JSON),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("evaluation", sa.JSON),
        sa.Column("operating_points", sa.JSON),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.UniqueConstraint("product_id", "number"),
    )
    op.create_table(
        "aliases",
        sa.Column("product_id", sa.Integer, sa.ForeignKey("products.id"), primary_key=True),
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("version_id", sa.Integer, sa.ForeignKey("versions.id"), nullable=False),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(50), nullable=False),
        sa.Column("product", sa.String(200)),
        sa.Column("detail", sa.JSON, nullable=False),
    )
    op.create_index("ix_events_product", "events", ["product", "id"])
    op.create_table(
        "records",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("product", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer),
        sa.Column("model_id", sa.String(200), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("normalised_score", sa.Float, nullable=False),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("verdict", sa.String(20), nullable=False),
        sa.Column("regions", sa.JSON, nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=False),
    )
    op.create_index("ix_records_product_at", "records", ["product", "at"])
    op.create_table(
        "kept_images",
        sa.Column("record_id", sa.Integer, sa.ForeignKey("records.id"), primary_key=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("anomalous", sa.Boolean, nullable=False),
    )
    op.create_index("ix_kept_images_order", "kept_images", ["anomalous", "record_id"])
    usage = op.create_table(
        "image_usage",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("bytes", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(usage, [{"id": 1, "bytes": 0}])
    op.create_table(
        "tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked", sa.Boolean, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "tokens",
        "image_usage",
        "kept_images",
        "records",
        "events",
        "aliases",
        "versions",
        "products",
    ):
        op.drop_table(table)
