"""Storage: SQLAlchemy models, the database session, Alembic migrations."""
