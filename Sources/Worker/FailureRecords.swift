import AWSCore
import AWSServices
import FoundationEssentials

/// The failure records the daemon writes to the output bucket: one per input given up, one per bad message. They are
/// how a message leaves the queue with a trace: the fate table deletes a given-up message only once its record is
/// written.
public enum FailureRecords {
    /// `_failed/<input key>.json`; when that would pass S3's 1,024-byte limit on keys,
    /// `_failed/_long-keys/<SHA-256 of the input key>.json` (the record names the whole input inside).
    public static func key(forInput key: String) -> String {
        let plain = "_failed/" + key + ".json"
        if plain.utf8.count <= MessageParser.maxKeyBytes { return plain }
        return "_failed/_long-keys/" + Digest.sha256(Array(key.utf8)).hexString + ".json"
    }

    /// `_failed/_bad-messages/<message id>.json`.
    static func key(forBadMessage messageID: String) -> String { "_failed/_bad-messages/\(messageID).json" }

    /// An input's record: what failed, why, how often, where, and the end of the command's stderr.
    static func body(_ failure: TaskFailure, message: SQSMessage, instanceID: String, time: Date) -> [UInt8] {
        var fields: [String: JSONValue] = [
            "input": .string(failure.input.description), "reason": .string(failure.reason),
            "exitStatus": .string(failure.outcome?.summary ?? "none"),
            "attempts": .number(Double(message.receiveCount)),
            "instanceId": .string(instanceID),
            "durationSeconds": .number((failure.seconds * 1000).rounded() / 1000),
            "stderrTail": .string(failure.stderrTail), "messageId": .string(message.messageID),
            "time": .string(CivilTime(date: time).iso8601),
        ]
        if let usage = failure.usage {
            if let peak = usage.peakMemoryBytes { fields["peakMemoryBytes"] = .number(Double(peak)) }
            if let cpu = usage.cpuSeconds { fields["cpuSeconds"] = .number((cpu * 1000).rounded() / 1000) }
            fields["usageFrom"] = .string(usage.source)
        }
        return Array(JSONValue.object(fields).serialized.utf8)
    }

    /// A bad message's record: why, and the start of its body.
    static func body(badMessage message: SQSMessage, reason: String, instanceID: String) -> [UInt8] {
        Array(
            JSONValue.object([
                "messageId": .string(message.messageID), "reason": .string(reason),
                "body": .string(String(message.body.prefix(4096))), "instanceId": .string(instanceID),
            ]).serialized.utf8)
    }
}
