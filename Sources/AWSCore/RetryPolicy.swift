/// Capped exponential backoff: retry n waits up to min(cap, base·2ⁿ⁻¹), all of it random by default (full jitter),
/// or its upper half random (equal jitter: never much shorter than the step), or none of it. Jitter spreads a fleet's
/// retries out, so a throttled service is not hit by synchronized waves.
/// (https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/)
///
/// Every pause before trying again goes through one of these: AWS calls, receives that failed, the ledger's writes,
/// `enqueue`'s batches.
public struct RetryPolicy: Sendable {
    public enum Jitter: Sendable {
        /// Uniform in [0, step).
        case full
        /// Uniform in [step/2, step).
        case equal
        /// The step itself.
        case none
    }

    /// Total attempts, the first included.
    public var maxAttempts: Int
    public var baseDelay: Double
    public var maxDelay: Double
    /// Returns a uniform random number in [0, 1); injectable for tests.
    public var random: @Sendable () -> Double
    public var jitter: Jitter

    public init(
        maxAttempts: Int = 5, baseDelay: Double = 0.1, maxDelay: Double = 20, jitter: Jitter = .full,
        random: @escaping @Sendable () -> Double = { Double.random(in: 0..<1) }
    ) {
        self.maxAttempts = maxAttempts
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
        self.jitter = jitter
        self.random = random
    }

    /// Seconds to wait before retry number `retry` (1 for the first retry).
    public func delay(beforeRetry retry: Int) -> Double {
        let exponent = Double(min(retry - 1, 30))
        let ceiling = min(maxDelay, baseDelay * pow2(exponent))
        switch jitter {
        case .full: return ceiling * random()
        case .equal: return ceiling * (0.5 + random() / 2)
        case .none: return ceiling
        }
    }

    private func pow2(_ e: Double) -> Double {
        var v = 1.0
        for _ in 0..<Int(e) { v *= 2 }
        return v
    }
}
