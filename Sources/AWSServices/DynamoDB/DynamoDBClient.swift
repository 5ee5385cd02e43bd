import AWSCore
import FoundationEssentials
import Logging

/// A DynamoDB attribute value in the wire format (`{"S": "x"}`, `{"N": "1"}`, ...).
public indirect enum DynamoValue: Sendable, Equatable, Codable {
    case s(String)
    case n(String)
    case bool(Bool)
    case null
    case m([String: DynamoValue])
    case l([DynamoValue])
    case ss([String])

    enum Key: String, CodingKey { case S, N, BOOL, NULL, M, L, SS }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        if let v = try c.decodeIfPresent(String.self, forKey: .S) {
            self = .s(v)
        } else if let v = try c.decodeIfPresent(String.self, forKey: .N) {
            self = .n(v)
        } else if let v = try c.decodeIfPresent(Bool.self, forKey: .BOOL) {
            self = .bool(v)
        } else if c.contains(.NULL) {
            self = .null
        } else if let v = try c.decodeIfPresent([String: DynamoValue].self, forKey: .M) {
            self = .m(v)
        } else if let v = try c.decodeIfPresent([DynamoValue].self, forKey: .L) {
            self = .l(v)
        } else if let v = try c.decodeIfPresent([String].self, forKey: .SS) {
            self = .ss(v)
        } else {
            throw DecodingError.dataCorrupted(
                .init(codingPath: c.codingPath, debugDescription: "unknown attribute type"))
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: Key.self)
        switch self {
        case .s(let v): try c.encode(v, forKey: .S)
        case .n(let v): try c.encode(v, forKey: .N)
        case .bool(let v): try c.encode(v, forKey: .BOOL)
        case .null: try c.encode(true, forKey: .NULL)
        case .m(let v): try c.encode(v, forKey: .M)
        case .l(let v): try c.encode(v, forKey: .L)
        case .ss(let v): try c.encode(v, forKey: .SS)
        }
    }

    public static func number<N: BinaryInteger>(_ n: N) -> DynamoValue { .n(String(n)) }
    public static func number(_ d: Double) -> DynamoValue { .n(String(d)) }

    public var string: String? {
        if case .s(let v) = self { return v }
        return nil
    }
    public var int: Int? {
        if case .n(let v) = self { return Int(v) ?? Double(v).map { Int($0) } }
        return nil
    }
    public var double: Double? {
        if case .n(let v) = self { return Double(v) }
        return nil
    }
}

public typealias DynamoItem = [String: DynamoValue]

/// One page of a Query.
public struct DynamoQueryPage: Sendable {
    public var items: [DynamoItem]
    public var lastEvaluatedKey: DynamoItem?
}

/// DynamoDB over the AWS JSON 1.0 protocol: the three calls the ledger needs, and table set-up for tests and tools.
public struct DynamoDBClient: Sendable {
    public let context: AWSContext
    public let endpoint: ServiceEndpoint
    let json: JSONProtocol

    public init(context: AWSContext, region: String? = nil) throws(AWSError) {
        self.context = context
        self.endpoint = try context.endpoint("dynamodb", region: region)
        self.json = JSONProtocol(targetPrefix: "DynamoDB_20120810", client: context.client)
    }

    struct PutInput: Encodable {
        var TableName: String
        var Item: DynamoItem
        var ConditionExpression: String?
        var ExpressionAttributeNames: [String: String]?
        var ExpressionAttributeValues: DynamoItem?
    }

    public func putItem(
        table: String, item: DynamoItem, condition: String? = nil, names: [String: String]? = nil,
        values: DynamoItem? = nil, logger: Logger
    ) async throws(AWSError) {
        let _: EmptyOutput = try await json.call(
            "PutItem",
            PutInput(
                TableName: table, Item: item, ConditionExpression: condition,
                ExpressionAttributeNames: names, ExpressionAttributeValues: values),
            endpoint: endpoint, logger: logger)
    }

    struct UpdateInput: Encodable {
        var TableName: String
        var Key: DynamoItem
        var UpdateExpression: String
        var ConditionExpression: String?
        var ExpressionAttributeNames: [String: String]?
        var ExpressionAttributeValues: DynamoItem?
    }

    public func updateItem(
        table: String, key: DynamoItem, update: String, condition: String? = nil,
        names: [String: String]? = nil, values: DynamoItem? = nil,
        logger: Logger
    ) async throws(AWSError) {
        let _: EmptyOutput = try await json.call(
            "UpdateItem",
            UpdateInput(
                TableName: table, Key: key, UpdateExpression: update, ConditionExpression: condition,
                ExpressionAttributeNames: names, ExpressionAttributeValues: values),
            endpoint: endpoint, logger: logger)
    }

    struct QueryInput: Encodable {
        var TableName: String
        var KeyConditionExpression: String
        var ExpressionAttributeNames: [String: String]?
        var ExpressionAttributeValues: DynamoItem
        var ExclusiveStartKey: DynamoItem?
        var Limit: Int?
        var ScanIndexForward: Bool?
        var ConsistentRead: Bool?
    }
    struct QueryOutput: Decodable {
        var Items: [DynamoItem]?
        var LastEvaluatedKey: DynamoItem?
    }

    public func query(
        table: String, keyCondition: String, names: [String: String]? = nil, values: DynamoItem,
        startKey: DynamoItem? = nil, limit: Int? = nil, forward: Bool? = nil, consistent: Bool? = nil,
        logger: Logger
    ) async throws(AWSError) -> DynamoQueryPage {
        let output: QueryOutput = try await json.call(
            "Query",
            QueryInput(
                TableName: table, KeyConditionExpression: keyCondition, ExpressionAttributeNames: names,
                ExpressionAttributeValues: values, ExclusiveStartKey: startKey, Limit: limit,
                ScanIndexForward: forward, ConsistentRead: consistent),
            endpoint: endpoint, logger: logger)
        return DynamoQueryPage(items: output.Items ?? [], lastEvaluatedKey: output.LastEvaluatedKey)
    }

    /// Every item the query matches, page by page (as `S3Client.listAll` does for a listing).
    public func queryAll(
        table: String, keyCondition: String, names: [String: String]? = nil, values: DynamoItem,
        logger: Logger
    ) async throws(AWSError) -> [DynamoItem] {
        var items: [DynamoItem] = []
        var start: DynamoItem?
        repeat {
            let page = try await query(
                table: table, keyCondition: keyCondition, names: names, values: values,
                startKey: start, logger: logger)
            items += page.items
            start = page.lastEvaluatedKey
        } while start != nil
        return items
    }

    struct CreateTableInput: Encodable {
        struct Attr: Encodable {
            var AttributeName: String
            var AttributeType: String
        }
        struct KeyElement: Encodable {
            var AttributeName: String
            var KeyType: String
        }
        var TableName: String
        var AttributeDefinitions: [Attr]
        var KeySchema: [KeyElement]
        var BillingMode = "PAY_PER_REQUEST"
    }

    /// Creates a table with a string partition key and string sort key, billed on demand.
    public func createTable(_ table: String, partitionKey: String, sortKey: String, logger: Logger)
        async throws(AWSError)
    {
        let input = CreateTableInput(
            TableName: table,
            AttributeDefinitions: [
                .init(AttributeName: partitionKey, AttributeType: "S"),
                .init(AttributeName: sortKey, AttributeType: "S"),
            ],
            KeySchema: [
                .init(AttributeName: partitionKey, KeyType: "HASH"), .init(AttributeName: sortKey, KeyType: "RANGE"),
            ])
        let _: EmptyOutput = try await json.call("CreateTable", input, endpoint: endpoint, logger: logger)
    }
}
