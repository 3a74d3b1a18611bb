//! Any bytes as an AdmissionReview body: decoding and the capture decision
//! must never panic, whatever arrives on the webhook port.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapback::capture::decide::classify;
use snapback::capture::review::Review;
use snapback::config::CaptureConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(review) = Review::from_slice(data) {
        let cfg = CaptureConfig::with_namespace("snapback-system");
        let _ = classify(&review, &cfg);
        let _ = review.object_name();
        let _ = review.object_namespace();
        let _ = review.user_extra("snapback.io/action");
    }
});
