from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import Category, Product


def receive(session: Session, sku: str, quantity: int) -> Product:
    product = session.scalars(select(Product).where(Product.sku == sku)).one()
    product.stock += quantity
    session.commit()
    return product


def restock_all(engine, quantity: int) -> int:
    with Session(engine) as session:
        products = session.scalars(select(Product)).all()
        for product in products:
            product.stock += quantity
        session.commit()
        return len(products)


def add_category(session: Session, name: str, skus) -> Category:
    category = Category(name=name, products=[Product(sku=sku) for sku in skus])
    session.add(category)
    session.commit()
    return category
