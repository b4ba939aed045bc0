-- One spelling, "fulfill", as in the public RPC `FulfillOrder` and the FULFILLED status. The
-- fulfillment saga's stored kind and the event type it emits were spelled "fulfil"; rows
-- written before this migration are renamed so that running sagas resume and unpublished
-- events carry the name consumers now expect. Payloads of already published events are
-- history and stay as they were sent.
UPDATE saga_instances SET kind = 'fulfill_order' WHERE kind = 'fulfil_order';
UPDATE outbox SET event_type = 'OrderFulfillmentRequested'
    WHERE event_type = 'OrderFulfilmentRequested' AND published_at IS NULL;
UPDATE dead_letters SET event_type = 'OrderFulfillmentRequested'
    WHERE event_type = 'OrderFulfilmentRequested';
