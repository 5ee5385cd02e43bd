import AWSCore

/// Every interval the daemon derives from the queue's visibility timeout, in one place.
///
/// A received message is hidden from other workers for `visibilityTimeout` seconds; everything the daemon times
/// must fit inside that: the heartbeat extends it before it lapses, a slot holds only what it can start soon, a held
/// message goes back while it is still hidden, a settled message's batched delete goes out while it is still hidden,
/// a retried message comes back within one timeout. These fractions depend on one another, so they are derived
/// together here, and `VisibilityPlanTests` checks how they relate for every timeout SQS allows.
public struct VisibilityPlan: Sendable, Equatable {
    /// SQS's longest visibility, and the longest one receive can keep a message hidden: 12 hours.
    public static let sqsMaximum = 43200
    /// Seconds kept in hand under SQS's 12-hour ceiling, for the extension's own latency.
    static let ceilingMargin = 60

    /// Seconds a received message stays hidden (1...43200).
    public let visibilityTimeout: Int

    /// The longest `taskTimeout` one receive can cover: the 12 hours, less the margin the heartbeat keeps and ten
    /// minutes for the download, the upload and the settling around the command.
    public static let longestTask = sqsMaximum - ceilingMargin - 600

    public init(visibilityTimeout: Int) {
        self.visibilityTimeout = max(1, min(Self.sqsMaximum, visibilityTimeout))
    }

    /// The heartbeat extends a running task's message every half timeout, counted from the receive: half the
    /// timeout is always left when an extension goes out, time enough for a slow call.
    public var heartbeatInterval: Duration { .seconds(max(1, visibilityTimeout / 2)) }

    /// A message a slot received but has not started is released (made visible at once) after waiting this long,
    /// half its timeout: the slot is busier than it expected, and another worker can start it now.
    public var holdLimit: Duration { .milliseconds(visibilityTimeout * 500) }

    /// Seconds of work a slot takes in one receive (`ReceiveSizer`): two, or a quarter of the timeout when that is
    /// shorter, so that what it holds starts well before `holdLimit`.
    public var receiveHorizon: Double { min(2, Double(visibilityTimeout) / 4) }

    /// The longest a slot's task may take for the slot to receive its next message while the task's command runs
    /// (`prefetch`): the message waits that long for its command, hidden from other workers. A quarter of the timeout,
    /// at most five minutes: a long task's next message is better left to a worker that is free.
    public var prefetchHorizon: Double { min(300, Double(visibilityTimeout) / 4) }

    /// How long a settled message may wait for nine others before its `DeleteMessageBatch` goes: a second from 20 s
    /// up, where at least ten seconds are left when the heartbeat stops; none below, where each message is deleted
    /// as soon as it is settled.
    public var deleteLinger: Duration { visibilityTimeout >= 20 ? .seconds(1) : .zero }

    /// Seconds before a failed message is received again: `base` doubled for each earlier receive, at most one
    /// timeout.
    public func retryDelay(receiveCount: Int, base: Int) -> Int {
        let backoff = RetryPolicy(
            maxAttempts: .max, baseDelay: Double(base), maxDelay: Double(visibilityTimeout), jitter: .none)
        return Int(backoff.delay(beforeRetry: max(1, receiveCount)))
    }

    /// The visibility one heartbeat asks for, `secondsSinceReceive` after this receive of the message: the timeout,
    /// or what is left under SQS's 12 hours; 0 when nothing is left.
    public func extensionSeconds(secondsSinceReceive elapsed: Int) -> Int {
        min(visibilityTimeout, max(0, Self.sqsMaximum - elapsed - Self.ceilingMargin))
    }
}
