import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from inventory.models import Base


@pytest.fixture
def engine(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/inventory.db")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine):
    Session = sessionmaker(bind=engine)
    with Session() as session:
        yield session
