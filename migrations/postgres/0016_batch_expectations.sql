-- A saga step's commit runs as one statement without a transaction when it can (`Batch::expect`
-- in host/infrastructure/persistence/src/sql/batch.rs): every part of the batch is a
-- data-modifying CTE, and the statement's last expression calls this function when a part
-- changed another number of rows than its commit needs (a moved version, a lost lease, a
-- plugin key that exists already, a stock counter at its bound). The error undoes every part,
-- and its SQLSTATE tells the store to find out which check failed the slow way.
CREATE FUNCTION oms_batch_expectation_failed() RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION 'a part of a one-statement commit changed an unexpected number of rows'
        USING ERRCODE = 'OMSB1';
END
$$;
