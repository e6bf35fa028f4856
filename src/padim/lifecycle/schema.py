"""The catalogue's tables (SQLAlchemy Core), at the newest schema revision; the migrations
(`padim/lifecycle/migrations`) build and upgrade them. Products with numbered versions and
their lineage, aliases pointing at versions, inspection records with the images kept of them
and their disk usage, API tokens (hashed), and the audit events every change writes."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

metadata = MetaData()

products = Table(
    "products",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

versions = Table(
    "versions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("product_id", Integer, ForeignKey("products.id"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("path", Text, nullable=False),  # the model file in the store
    Column("sha256", String(64), nullable=False),
    Column("parent", Integer),  # the version number it was derived from (update, refit)
    Column("n_train", Integer),
    Column("images_sha256", String(64)),  # one digest of the training images' digests
    Column("image_digests", JSON),  # SHA-256 of every training image, sorted
    Column("config", JSON, nullable=False),  # the fit options (the model file's config)
    Column("evaluation", JSON),  # the metrics it passed, when given
    Column("operating_points", JSON),  # name -> threshold, from the model file
    Column("created_by", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("note", Text, nullable=False, default=""),
    UniqueConstraint("product_id", "number"),
)

aliases = Table(
    "aliases",
    metadata,
    Column("product_id", Integer, ForeignKey("products.id"), primary_key=True),
    Column("name", String(100), primary_key=True),
    Column("version_id", Integer, ForeignKey("versions.id"), nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(50), nullable=False),  # register, promote, rollback, token, ...
    Column("product", String(200)),
    Column("detail", JSON, nullable=False),
    Index("ix_events_product", "product", "id"),
)

records = Table(
    "records",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("product", String(200), nullable=False),
    Column("version", Integer),  # the registry version that judged it (None: a plain file)
    Column("model_id", String(200), nullable=False),
    Column("source", String(200), nullable=False),  # service, watch (and the host)
    Column("name", Text, nullable=False),  # the upload's file name, or the frame
    Column("score", Float, nullable=False),
    Column("normalised_score", Float, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("verdict", String(20), nullable=False),
    Column("regions", JSON, nullable=False),
    Column("image_sha256", String(64), nullable=False),
    Index("ix_records_product_at", "product", "at"),
)

kept_images = Table(  # the images kept by the retention rule, while they are kept
    "kept_images",
    metadata,
    Column("record_id", Integer, ForeignKey("records.id"), primary_key=True),
    Column("path", Text, nullable=False),  # relative to the store's images folder
    Column("bytes", BigInteger, nullable=False),
    Column("anomalous", Boolean, nullable=False),  # good ones are pruned first
    Column("pinned", Boolean, nullable=False, server_default=false()),  # feedback: kept
    Index("ix_kept_images_order", "anomalous", "record_id"),
)

feedback = Table(  # what operators said about records; the newest label of a record counts
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("record_id", Integer, ForeignKey("records.id"), nullable=False),
    Column("label", String(20), nullable=False),  # false_alarm, defect, missed_defect
    Column("author", String(200), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("note", Text, nullable=False),
    Column("mask", Text),  # a defect mask, relative to the images folder
    Index("ix_feedback_record", "record_id", "id"),
)

image_usage = Table(  # one row: the bytes of every kept image, updated with them
    "image_usage",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("bytes", BigInteger, nullable=False),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("role", String(20), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),  # SHA-256 of the token
    Column("created_by", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
)

product_images = Table(  # the studio's images of a product: good ones to train on, defects
    "product_images",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("product", String(200), nullable=False),
    Column("kind", String(10), nullable=False),  # good, defect
    Column("defect_type", String(100), nullable=False),  # "" for good images
    Column("split", String(10), nullable=False),  # train, test (by digest: stable)
    Column("name", Text, nullable=False),  # the uploaded file's name
    Column("sha256", String(64), nullable=False),
    Column("path", Text, nullable=False),  # relative to the files folder
    Column("mask", Text),  # a defect's mask, relative to the files folder
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("fingerprint", LargeBinary, nullable=False),  # fine detail at 64x64: near-duplicates
    Column("added_by", String(200), nullable=False),
    Column("added_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("product", "sha256"),
    Index("ix_product_images_product", "product", "kind", "id"),
)
