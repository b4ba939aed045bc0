-- What the customer must do for a payment to go on (an `oms:plugins@0.2.0` provider's
-- `requires-action`: a 3-D Secure challenge, a bank redirect) and until when the provider
-- waits, in Unix milliseconds. Set only while `payment_status` is ACTION_REQUIRED, the
-- payment status this migration adds.
ALTER TABLE orders ADD COLUMN payment_action_url TEXT;
ALTER TABLE orders ADD COLUMN payment_action_expires_at BIGINT;

ALTER TABLE orders DROP CONSTRAINT orders_payment_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_payment_status_check
    CHECK (payment_status IN (
        'PENDING', 'AUTHORIZED', 'AUTH_FAILED', 'CAPTURED', 'PARTIALLY_CAPTURED', 'VOIDED',
        'REFUNDED', 'PARTIALLY_REFUNDED', 'UNRESOLVED', 'ACTION_REQUIRED'));
