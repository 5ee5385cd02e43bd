import AWSServices
import TaskLedger

/// A fresh ledger table on moto, keyed as the daemon's ledger is (`LedgerSchema`), and a client for it.
public func makeLedgerTable() async throws -> (DynamoDBClient, String) {
    let dynamo = try DynamoDBClient(context: try TestEnvironment.motoContext())
    let table = uniqueName("ledger")
    try await dynamo.createTable(
        table, partitionKey: LedgerSchema.partitionKey, sortKey: LedgerSchema.sortKey, logger: quietLogger)
    return (dynamo, table)
}
