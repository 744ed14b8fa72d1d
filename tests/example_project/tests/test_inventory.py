from sqlalchemy import func, select
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from inventory import services
from inventory.models import Category, Employee, Manager, Product


def test_add_products(engine):
    with Session(engine) as session:
        session.add_all([Product(sku=f"sku-{i}", stock=i) for i in range(3)])
        session.commit()
        assert session.scalar(select(func.sum(Product.stock))) == 3


def test_receive(session):
    session.add(Product(sku="bolt"))
    session.commit()
    assert services.receive(session, "bolt", 5).stock == 5


def test_restock_all(engine, session):
    session.add_all([Product(sku="nut"), Product(sku="washer", stock=2)])
    session.commit()
    assert services.restock_all(engine, 10) == 2
    session.expire_all()
    assert sorted(p.stock for p in session.scalars(select(Product))) == [10, 12]


def test_category_with_products(session):
    category = services.add_category(session, "hardware", ["hinge", "latch"])
    assert [p.category_id for p in category.products] == [category.id, category.id]
    session.delete(category)
    session.commit()
    assert session.scalar(select(func.count()).select_from(Product)) == 0


def test_managers(session):
    session.add(Manager(name="ann", budget=100))
    session.commit()
    assert [type(e) for e in session.scalars(select(Employee))] == [Manager]


def test_scoped_session(engine):
    registry = scoped_session(sessionmaker(engine))
    registry.add(Category(name="tools"))
    registry.commit()
    assert registry.scalars(select(Category.name)).all() == ["tools"]
    registry.remove()
