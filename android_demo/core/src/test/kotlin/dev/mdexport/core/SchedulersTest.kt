package dev.mdexport.core

import dev.mdexport.core.TestSupport.assertAllClose
import dev.mdexport.core.TestSupport.assertThrows
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test

class SchedulersTest {
    private val golden = TestSupport.golden("schedulers")

    private fun configOf(case: JsonObject) = SchedulerConfig(case.obj("config"))

    private fun nameOf(cls: String) = when (cls) {
        "EulerDiscreteScheduler" -> "euler"
        "DDIMScheduler" -> "ddim"
        "LCMScheduler" -> "lcm"
        "DPMSolverMultistepScheduler" -> "dpmpp-2m"
        else -> error(cls)
    }

    /** Replays the golden list of noise values for LCM's stochastic step. */
    private class ListNoise(values: List<Double>) : GaussianSource {
        private val iter = values.iterator()
        override fun randn(count: Int) = FloatArray(count) { iter.next().toFloat() }
    }

    @Test fun everyGoldenCaseMatchesDiffusers() {
        val cases = golden.objects("cases")
        assertTrue(cases.size >= 10)
        for (c in cases) {
            val name = c.string("name")
            val steps = c.int("steps")
            val s = Schedulers.create(nameOf(c.string("class")), configOf(c), steps)
            assertAllClose("$name timesteps", c.doubleList("timesteps"), s.timesteps)
            TestSupport.assertClose("$name init_noise_sigma", c.double("init_noise_sigma"), s.initNoiseSigma)
            if (c.has("sigmas")) {
                val sigmas = if (s is DpmSolverPlusPlus2M) s.sigmas else (s as EulerDiscrete).sigmas
                assertAllClose("$name sigmas", c.doubleList("sigmas"), sigmas)
            }

            val base = c.doubleList("base")
            val noise = c.array("step_noise")
            var sample = FloatArray(base.size) { (base[it] * s.initNoiseSigma).toFloat() }
            c.objects("per_step").forEachIndexed { i, step ->
                val t = s.timesteps[i]
                val scaled = s.scaleModelInput(sample, i)
                assertAllClose("$name step $i scaled", step.doubleList("scaled"), DoubleArray(scaled.size) { scaled[it].toDouble() })
                // the fake model of make_goldens.py: 0.3 * scaled + 0.1 * base + 0.001 * t, in float32
                val out = FloatArray(scaled.size) { (0.3f * scaled[it] + 0.1f * base[it].toFloat() + (0.001 * t).toFloat()) }
                @Suppress("UNCHECKED_CAST")
                val stepNoise = ListNoise((noise[i] as List<Any?>).map { (it as Number).toDouble() })
                sample = s.step(out, i, sample, stepNoise)
                assertAllClose("$name step $i prev_sample", step.doubleList("prev_sample"), DoubleArray(sample.size) { sample[it].toDouble() })
                if (step.has("denoised")) {
                    val d = (s as Lcm).lastDenoised!!
                    assertAllClose("$name step $i denoised", step.doubleList("denoised"), DoubleArray(d.size) { d[it].toDouble() })
                }
            }
        }
    }

    @Test fun sd15EulerTwentyStepsKnownValues() {
        val c = golden.objects("cases").first { it.string("name") == "euler_sd15_leading_20" }
        val s = Schedulers.create("euler", configOf(c), 20) as EulerDiscrete
        assertEquals(951.0, s.timesteps.first(), 0.0)
        assertEquals(1.0, s.timesteps.last(), 0.0)
        assertEquals(21, s.sigmas.size)
        assertEquals(0.0, s.sigmas.last(), 0.0)
        assertTrue(s.sigmas.first() > 10.0)
    }

    @Test fun trailingRoundsHalfToEvenLikeNumpy() {
        // 1000 / 16 = 62.5 per step: 812.5 must round to 812 as numpy does (Math.round would give 813)
        val cfg = SchedulerConfig.parse("""{"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "timestep_spacing": "trailing"}""")
        val ts = Schedulers.create("ddim", cfg, 16).timesteps
        assertEquals(811.0, ts[3], 0.0)
        assertEquals(999.0, ts[0], 0.0)
    }

    @Test fun unsupportedSettingsAreClearErrors() {
        val cfg = SchedulerConfig.parse("""{"beta_schedule": "sigmoid"}""")
        val e = assertThrows<BundleException> { Schedulers.create("euler", cfg, 10) }
        assertTrue(e.message, e.message!!.contains("beta_schedule \"sigmoid\""))
        val e2 = assertThrows<BundleException> { Schedulers.create("unipc", cfg, 10) }
        assertTrue(e2.message, e2.message!!.contains("available: euler, ddim, dpmpp-2m, lcm"))
        val e3 = assertThrows<BundleException> {
            Schedulers.create("dpmpp-2m", SchedulerConfig.parse("""{"solver_type": "bh2"}"""), 10)
        }
        assertTrue(e3.message, e3.message!!.contains("solver_type \"bh2\""))
    }

    @Test fun dpmSolverCoversEveryGoldenVariant() {
        val names = golden.objects("cases").map { it.string("name") }.filter { it.startsWith("dpmpp2m") }
        assertTrue(names.toString(), names.size >= 8)
        // DPM-Solver++ keeps the previous data prediction: steps out of order are refused
        val s = Schedulers.create("dpmpp-2m", SchedulerConfig.parse("{}"), 4)
        val x = FloatArray(4) { 1f }
        s.step(x, 0, x, ListNoise(emptyList()))
        assertThrows<IllegalArgumentException> { s.step(x, 2, x, ListNoise(emptyList())) }
    }

    /**
     * The pipeline's scheduler-config rewrite (diffusers' StableDiffusionPipeline; md_export.pipeline.loop):
     * steps_offset 1 and clip_sample false for cfg-batch2 / none, the config untouched for embedded.
     * Goldens from md_export.pipeline.schedulers on an old Euler config (steps_offset 0, no clip_sample).
     */
    @Test fun pipelineConfigRewriteMatchesPython() {
        val cases = golden.objects("rewrite_cases")
        assertEquals(4, cases.size)
        for (c in cases) {
            val guidance = Guidance.fromWire(c.string("guidance"))!!
            val name = "${c.string("scheduler")}/${c.string("guidance")}"
            val steps = c.int("steps")
            val s = Schedulers.create(c.string("scheduler"), configOf(c).forGuidance(guidance), steps)
            assertAllClose("$name timesteps", c.doubleList("timesteps"), s.timesteps)
            val base = c.doubleList("base")
            var sample = FloatArray(base.size) { (base[it].toFloat() * s.initNoiseSigma.toFloat()) }
            c.array("prev_samples").forEachIndexed { i, expected ->
                val scaled = s.scaleModelInput(sample, i)
                val out = FloatArray(scaled.size) { (0.3f * scaled[it] + 0.1f * base[it].toFloat() + (0.001 * s.timesteps[i]).toFloat()) }
                sample = s.step(out, i, sample, ListNoise(emptyList()))
                @Suppress("UNCHECKED_CAST")
                val e = (expected as List<Any?>).map { (it as Number).toDouble() }
                assertAllClose("$name step $i", e, DoubleArray(sample.size) { sample[it].toDouble() })
            }
        }
        // what the rewrite changes, and that embedded (LCM) keeps the config as it is
        val old = configOf(cases[0])
        assertEquals(0, old.stepsOffset)
        val rewritten = old.forGuidance(Guidance.CFG_BATCH2)
        assertEquals(1, rewritten.stepsOffset)
        assertEquals(false, rewritten.bool("clip_sample", true))
        assertEquals(1, old.forGuidance(Guidance.NONE).stepsOffset)
        assertTrue(old.forGuidance(Guidance.EMBEDDED) === old)
        // without the rewrite DDIM clips x0 and is offset by one: a different result
        val plain = Schedulers.create("ddim", old, 10).timesteps
        val fixed = Schedulers.create("ddim", rewritten, 10).timesteps
        assertEquals(fixed[0] - 1, plain[0], 0.0)
    }

    @Test fun guidanceEmbeddingMatchesFormula() {
        val e = guidanceScaleEmbedding(8.0, 4)
        val w = 7000.0
        val f = Math.log(10000.0) / 1
        assertEquals(Math.sin(w), e[0].toDouble(), 1e-6)
        assertEquals(Math.sin(w * Math.exp(-f)), e[1].toDouble(), 1e-6)
        assertEquals(Math.cos(w), e[2].toDouble(), 1e-6)
        assertEquals(Math.cos(w * Math.exp(-f)), e[3].toDouble(), 1e-6)
    }
}
