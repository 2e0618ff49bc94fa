"""A small inventory: a file to try codefill on (the hole is line 8, at the start of `__init__`)."""


class Item:
    """One line of stock: a name, a unit price and a quantity."""

    def __init__(self, name, price, quantity=0):

        self.price = price
        self.quantity = quantity

    def total(self):
        """What the stock of this item is worth."""
        return self.price * self.quantity

    def __repr__(self):
        return f"Item({self.name!r}, {self.price}, {self.quantity})"


class Inventory:
    """Items by name."""

    def __init__(self):
        self.items = {}

    def add(self, item):
        self.items[item.name] = item

    def get(self, name):
        return self.items[name]

    def total(self):
        """What the whole stock is worth."""
        return sum(item.total() for item in self.items.values())


if __name__ == "__main__":
    stock = Inventory()
    stock.add(Item("apple", 0.5, 100))
    stock.add(Item("pear", 0.75, 40))
    print(stock.total())
