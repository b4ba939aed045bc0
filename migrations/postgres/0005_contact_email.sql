-- The contact e-mail given with the shipping address: where order and delivery notifications
-- go. Empty when the customer gave none (the formatters then send no e-mail).
ALTER TABLE orders ADD COLUMN ship_email TEXT NOT NULL DEFAULT '';
