"""A small inventory application on stock SQLAlchemy."""
