package dev.mdexport.core

import dev.mdexport.core.TestSupport.assertThrows
import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertTrue
import org.junit.Test

class ManifestTest {
    private val text = TestSupport.manifestText()

    @Test fun parsesRealisticManifest() {
        val m = Manifest.parse(text)
        assertEquals(1, m.schemaVersion)
        assertEquals("tflite", m.target)
        assertEquals("0.1.0", m.mdExportVersion)
        assertEquals("pass", m.parityStatus)
        val p = m.pipeline
        assertEquals(512, p.imageHeight)
        assertEquals(64, p.latentWidth)
        assertEquals(0.18215, p.vaeScalingFactor, 0.0)
        assertTrue(p.decoderAppliesScaling)
        assertEquals(Guidance.CFG_BATCH2, p.guidance)
        assertEquals(2, p.unetBatch)
        assertEquals(7.5, p.defaultGuidanceScale, 0.0)
        assertEquals(20, p.defaultSteps)
        assertEquals("euler", p.scheduler)
        assertEquals(768, p.textHiddenSize)
        assertEquals(TokenizerSpec("tokenizer/vocab.json", "tokenizer/merges.txt", 49406, 49407, 49407), p.tokenizer)
        assertEquals(setOf("text_encoder", "unet", "vae_decoder"), m.models.keys)
        val unet = m.unet
        assertEquals("unet.tflite", unet.file)
        assertEquals("unet", unet.signature)
        assertEquals(listOf("sample", "timestep", "encoder_hidden_states"), unet.inputs.map { it.name })
        assertEquals(listOf(2, 77, 768), unet.input("encoder_hidden_states")!!.shape)
        assertEquals(3438000000L, unet.bytes)
        assertEquals("int32", m.textEncoder.input("input_ids")!!.dtype)
        assertEquals(listOf(1, 3, 512, 512), m.vaeDecoder.output("image")!!.shape)
        m.requireTarget("tflite")
    }

    @Test fun rejectsOtherSchemaVersions() {
        for (v in listOf("2", "0")) {
            val e = assertThrows<BundleException> { Manifest.parse(text.replace("\"schema_version\": 1", "\"schema_version\": $v")) }
            assertTrue(e.message, e.message!!.startsWith("manifest.json: schema_version $v is not supported"))
            assertTrue(e.message, e.message!!.contains("reads schema_version 1"))
        }
        val e = assertThrows<BundleException> { Manifest.parse(text.replace("\"schema_version\": 1,", "")) }
        assertEquals("manifest.json: schema_version: missing", e.message)
    }

    @Test fun rejectsOtherTarget() {
        val m = Manifest.parse(text.replace("\"target\": \"tflite\"", "\"target\": \"coreml\""))
        val e = assertThrows<BundleException> { m.requireTarget("tflite") }
        assertTrue(e.message, e.message!!.contains("copy out/tflite/"))
    }

    @Test fun reportsInconsistentShapesAndNames() {
        val bad = text.replace("\"name\": \"noise_pred\"", "\"name\": \"out_sample\"")
            .replace("\"shape\": [2, 77, 768], \"dtype\": \"float32\", \"layout\": \"BSD\"", "\"shape\": [2, 77, 1024], \"dtype\": \"float32\", \"layout\": \"BSD\"")
        val e = assertThrows<BundleException> { Manifest.parse(bad) }
        assertTrue(e.message, e.message!!.contains("models.unet: no output named \"noise_pred\" (has: out_sample)"))
        assertTrue(e.message, e.message!!.contains("models.unet.encoder_hidden_states: shape [2, 77, 1024], expected [2, 77, 768]"))
    }

    @Test fun guidanceAndBatchMustAgree() {
        val e = assertThrows<BundleException> { Manifest.parse(text.replace("\"guidance\": \"cfg-batch2\"", "\"guidance\": \"none\"")) }
        assertTrue(e.message, e.message!!.contains("pipeline.unet_batch is 2 but guidance \"none\" needs 1"))
        val e2 = assertThrows<BundleException> { Manifest.parse(text.replace("\"guidance\": \"cfg-batch2\"", "\"guidance\": \"cfg\"")) }
        assertTrue(e2.message, e2.message!!.contains("unknown value \"cfg\""))
    }

    @Test fun missingModelIsNamed() {
        val start = text.indexOf("\"vae_decoder\": {")
        val end = text.indexOf("\"parity\"")
        val cut = text.substring(0, start).trimEnd().removeSuffix(",").trimEnd().removeSuffix("}").trimEnd().removeSuffix(",") +
            "\n    }\n  },\n  " + text.substring(end)
        val e = assertThrows<BundleException> { Manifest.parse(cut) }
        assertTrue(e.message, e.message!!.contains("models.vae_decoder is missing (has: text_encoder, unet)"))
    }

    @Test fun invalidJsonIsReportedWithFileName() {
        val e = assertThrows<BundleException> { Manifest.parse(text.dropLast(3)) }
        assertTrue(e.message, e.message!!.startsWith("manifest.json: invalid JSON at line"))
    }

    @Test fun lcmManifestNeedsTimestepCond() {
        val lcm = text.replace("\"guidance\": \"cfg-batch2\"", "\"guidance\": \"embedded\"")
            .replace("\"unet_batch\": 2,\n", "\"unet_batch\": 1,\n")
            .replace("[2, 4, 64, 64]", "[1, 4, 64, 64]").replace("[2, 77, 768]", "[1, 77, 768]")
            .replace("\"shape\": [2], \"dtype\"", "\"shape\": [1], \"dtype\"")
        val e = assertThrows<BundleException> { Manifest.parse(lcm) }
        assertTrue(e.message, e.message!!.contains("models.unet: no input named \"timestep_cond\""))
        val withCond = lcm.replace(
            "{\"name\": \"timestep\", \"shape\": [1], \"dtype\": \"float32\", \"layout\": \"B\"},",
            "{\"name\": \"timestep\", \"shape\": [1], \"dtype\": \"float32\", \"layout\": \"B\"},\n" +
                "        {\"name\": \"timestep_cond\", \"shape\": [1, 256], \"dtype\": \"float32\"},"
        )
        val m = Manifest.parse(withCond)
        assertEquals(Guidance.EMBEDDED, m.pipeline.guidance)
        assertEquals(listOf(1, 256), m.unet.input("timestep_cond")!!.shape)
        assertFalse(m.problems().any())
    }
}
